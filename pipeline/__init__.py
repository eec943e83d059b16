"""The embedding job: command line, options, pipeline graph and training commands."""
