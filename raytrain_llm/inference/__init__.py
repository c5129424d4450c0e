"""Using a trained model: loading a checkpoint for inference, text in and out, evaluation and
export. The commands are raytrain_llm.sample, raytrain_llm.evaluate, raytrain_llm.export and
raytrain_llm.consolidate."""
