"""Full-catalog ranking shared by validation during training and offline evaluation: target ranks
computed shard by shard, the ranking metrics, and the scoring of a batch by a (sharded) model."""
