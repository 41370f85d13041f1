"""Drivers that run a backend over a stream of records for a command.

A command parses its flags and hands the records to one of these; they call the
backends and the pure core, and write through the command's session. They never import
commands.
"""
