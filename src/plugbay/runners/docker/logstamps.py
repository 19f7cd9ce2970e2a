"""The log entries' timestamps, shared with the Kubernetes runner: see plugbay.runners.logstamps."""

from plugbay.runners.logstamps import EntryStamps, parse_stamp, split_entry

__all__ = ["EntryStamps", "parse_stamp", "split_entry"]
