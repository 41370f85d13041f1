"""Pure algorithms on records and arrays: no CLI, no terminal, no file handles."""
