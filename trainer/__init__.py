"""Critic-RM trainer: critique sampling, filtering, refinement, joint training, export."""
