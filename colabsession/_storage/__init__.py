"""Storage and checkpoints: the store a run is written to (local disk, a mount, the Drive API), the
checkpoint file format and its manifest, the Checkpointer with its save policy, async writer,
retention and lineage, replication to the location under a lease, and the loss history."""
