"""The node agent: spawns task processes on one node, bound to their cores, and reports exits."""
