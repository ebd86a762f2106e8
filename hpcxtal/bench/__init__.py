"""Reference tasks run from the command line with a config file (``hpcxtal benchmark``)."""
