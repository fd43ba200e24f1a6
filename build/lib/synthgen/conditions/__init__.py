"""Condition encoders: turn a Condition (reports, age, sex, heart rate) into the tensors the U-Net reads.

``prompts`` builds the paper's ordered text prompt, ``embedders`` turns prompts into cached unit vectors
(local MiniLM or OpenAI), and ``patient`` z-scores age and heart rate with statistics saved in the bundle.
"""
