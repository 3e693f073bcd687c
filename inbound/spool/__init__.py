"""The durable spool: messages on disk between the 250 reply and the last action (SPEC §7).

`store` is the one module that knows the layout on disk (it implements `inbound.core.ports`);
`commit` batches the SMTP sessions' commits through the store's public seal and publish;
`retry` holds the records (meta, dispatch state) and the retry schedule, pure.
"""
