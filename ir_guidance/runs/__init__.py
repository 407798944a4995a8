"""Whole runs of the stack (entry-point layer): one simulated insertion, a campaign.

``insertion`` starts the simulator and every node and waits for the outcome, ``score``
judges it against the simulator's ground truth, ``report`` draws it, ``campaign`` runs
many seeds in parallel and summarises them.
"""
