"""Domain-agnostic stages of domainfm: curation machinery, models, training, evaluation, export."""
