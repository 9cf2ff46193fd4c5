"""Publishing trained weights: the checkpoint folder with its model card, provenance and config, the
manifest the registry reads, the Hub upload, and the README's generated sections. Tooling."""
from .publish import PublishError, publish
from .push import PushError, push
