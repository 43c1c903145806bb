"""Fuzzing the car link with atheris: the decoders and the gateway's stream handling.

``targets.py`` holds the targets and their seed corpora, ``run_target.py`` runs one
target under atheris in its own process, ``driver.py`` runs them all and prints a table
(``make fuzz``; a short pass of it is a test, ``tests/unit/test_fuzz_short_pass.py``).
"""
