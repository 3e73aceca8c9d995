"""Hot issues (热点问题): messages about one problem at one place, grouped and ranked by heat.

`core` groups plain records and ranks them (no database); `sources` reads records from a
message-board CSV or the CRM's cases; `service` keeps supervisors' decisions and the cached
ranking the dashboard reads.
"""
