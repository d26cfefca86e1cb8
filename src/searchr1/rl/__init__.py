"""RL training: the trainer (trainer.py) and its roles (actor, critic, reference, reward, rollout_worker),
the algorithms' math (core, grpo, ppo, reinforce_pp), batches, log-probs and DeepSpeed engines."""
