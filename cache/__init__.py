"""The staging cache: layout on disk, index, eviction and purge."""
