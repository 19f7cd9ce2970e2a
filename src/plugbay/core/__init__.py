"""The shared core of go-plugin's model, one layer per folder, each importing only those below it.

errors <- protocol <- transport <- broker <- host | plugin <- resilience (plugbay.errors is the base).
"""
