"""Several hosts coordinated through etcd (docs/protocol.md §19, ../shared/DESIGN.md §8.2)."""
