"""What a person runs: the ``looptool`` command, the no-Docker topology, the demo, live watching
and the HTML report."""
