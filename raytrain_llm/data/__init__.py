from raytrain_llm.data.base import DataModule, IndexedDataset, ResumableBatchSampler

__all__ = ["DataModule", "IndexedDataset", "ResumableBatchSampler"]
