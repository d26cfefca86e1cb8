"""RL training core: PPO / GRPO / REINFORCE++ math, DeepSpeed engines and the trainer (RLTrainer)."""
