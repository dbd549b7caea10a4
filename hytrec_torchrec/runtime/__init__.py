"""What training, evaluation and serving all use: the job config, process-group setup, the
embedding tables and their sharding plan, the dense lookup, checkpoints (written, verified, safely
read) and building a model from a run directory. Depends on data/, modules/ and model; never on
training/, evaluation/ or serving/."""
