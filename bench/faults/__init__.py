"""The fault suite (issue 15, docs/RELIABILITY.md): a private stack with the services as real
processes, faults injected while tasks flow, one history recorder and one checker.

- :mod:`bench.faults.history`: what happened (submits and their acks, every status event read
  from the status topic, fault start and end times) and the recorder threads that write it;
- :mod:`bench.faults.checker`: the invariants and targets judged on a history (pure functions);
- :mod:`bench.faults.harness`: the stack, the services (start, SIGKILL, SIGSTOP, restart), the load;
- :mod:`bench.faults.scenarios`: the faults, one function each;
- :mod:`bench.faults.suite`: runs scenarios, prints the table (``python bench/faults.py``).
"""
