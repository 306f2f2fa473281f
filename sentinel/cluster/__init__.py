"""The replicated cluster: the controller's metadata state machine, the peer links between
brokers and the Raft ticker. Pure cores here import nothing from Trio (``metadata``,
``frames``); the actors (``transport``, ``ticker``) own the sockets and the time."""
