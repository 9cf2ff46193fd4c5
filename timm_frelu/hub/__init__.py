from .publish import PublishError, publish
from .push import PushError, push
