"""Running a decided message: one loop (`runner.run_message`) for every entry point, the step
ledgers it records into (`ledgers`), and the one builder of what an action sees (`context`)."""
