"""BROKEN EXAMPLES, kept apart from the reference cells: the seeds' real bugs.

Each module reproduces one bug found in the two documents the project came
from, so that the toolkit can be shown to catch and localise it.  None of
these is a reference cell; never use one to check another cell against.
"""
