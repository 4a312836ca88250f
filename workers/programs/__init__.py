"""The agent programs aiosd ships (registered under ``aiosd.programs`` in setup.cfg):
``summarize`` (one text in, a JSON summary out: the typical overnight batch) and
``react`` (a ReAct-style agent that calls tools and keeps notes in memory).
"""
