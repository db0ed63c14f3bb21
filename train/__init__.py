"""TRL-based trainers: fine-tuning (teacher, baselines), soft and hard knowledge distillation."""
