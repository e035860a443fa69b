"""The tracer provider's resource: hashed once, equal to the one it stands for."""

from opentelemetry import trace
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider

from conveyor_core.tracing import HashedOnceResource


def test_a_resource_hashed_once_is_the_same_resource() -> None:
    plain = Resource.create({SERVICE_NAME: "worker"})
    hashed = HashedOnceResource(plain)
    assert hashed == plain
    assert hash(hashed) == hash(plain)
    assert hashed.attributes == plain.attributes
    assert hashed != Resource.create({SERVICE_NAME: "api"})
    # The exporter groups spans by resource: every span of the provider shares one key.
    spans: dict[Resource, int] = {}
    provider = TracerProvider(resource=HashedOnceResource(plain))
    for _ in range(3):
        span = provider.get_tracer("test").start_span("work")
        span.end()
        assert isinstance(span, trace.Span)
        resource = span.resource  # type: ignore[attr-defined]
        spans[resource] = spans.get(resource, 0) + 1
    assert spans == {plain: 3}


def test_the_installed_provider_uses_it() -> None:
    provider = trace.get_tracer_provider()
    assert isinstance(provider, TracerProvider)
    assert isinstance(provider.resource, HashedOnceResource)
