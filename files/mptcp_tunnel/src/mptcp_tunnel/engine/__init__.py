"""The engine: event loops that move bytes between the sans-I/O core and the kernel.

``loop`` is a small epoll loop with timers; ``session`` is one CPE's tunnel as a state machine driven by
that loop; ``worker`` is a BGW worker process (sessions handed over with their fds); ``channel`` is the
control <-> worker message pipe.
"""
