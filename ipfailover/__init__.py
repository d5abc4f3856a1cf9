"""Active/standby IP failover for guardian (see the failover issue; not built yet)."""
