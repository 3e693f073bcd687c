"""Target sets: where actions go. `local` (files under the data directory) and later `aws`."""
