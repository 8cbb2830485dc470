"""Data: corpus -> tokens (HF datasets) -> memory-mapped token shards -> step-indexed sampling.

TokenDataModule feeds the language model; TabularDataModule feeds the classifier example.
"""
from trainer.data.tabular import TabularDataModule
from trainer.data.token_module import TokenDataModule

__all__ = ["TokenDataModule", "TabularDataModule"]
