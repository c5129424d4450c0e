"""Export a trained model: the Hugging Face transformers layout (GPT-2, Llama, Mixtral, Qwen2-MoE;
exact mappings or a refusal naming the config key) or plain safetensors of our state dict."""
