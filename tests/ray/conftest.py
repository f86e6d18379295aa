import pytest


@pytest.fixture(scope="module")
def ray_cluster():
    """One local loopback cluster per test module, always shut down."""
    from actors.cluster import local_ray

    with local_ray(num_cpus=2) as temp_dir:
        yield temp_dir
