"""Local processes: a broker, a fleet of agents and a controller on this machine, the demo, and
the fault drills the tests and benchmarks run."""
