"""The engine: one function per pipeline step. Each loads its rows, checks the state it expects,
does its work outside any transaction, writes the result with a compare-and-set, and returns the
next steps for the task shell to enqueue."""
