"""The run journal and its replay: the journaled step, the run's scope, run control, the host's ports."""
