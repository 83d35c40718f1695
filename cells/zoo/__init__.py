"""BROKEN EXAMPLES, kept apart from the reference cells: the seeds' real bugs.

Each module reproduces one bug found in the two documents the project came
from, so that the toolkit can be shown to catch and localise it.  None of
these is a reference cell; never use one to check another cell against.

Modules:

- ``gru_bugs``: the reference GRU with one derivation bug each (the blog's, and
  others), localised by the harness to gate block and time step;
- ``lstm_bugs``: the reference LSTM with one classic derivation bug each;
- ``truncation_bugs``: the truncation-window bug of the BPTT driver both share;
- ``theano_question_gru``: the seed question's Theano GRU layer and its
  ``rval[0]``, which only ``gradcheck compare`` can see.
"""
