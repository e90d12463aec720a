"""Driving runs in a process: run handles, the resume worker and crash takeover."""
