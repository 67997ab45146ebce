"""The quality judge: recorded pairs of answers graded blind, in both orders, by an LLM."""
