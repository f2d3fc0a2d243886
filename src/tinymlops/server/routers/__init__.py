"""One router per resource; each module holds its request/response models beside its routes."""
