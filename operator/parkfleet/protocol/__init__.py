"""The car link's wire protocol (generated from ``carlink.proto``)."""
