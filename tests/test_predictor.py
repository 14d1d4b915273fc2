import pytest
import torch

from nerncompress.predictor import PredictorConfig, build_predictor


def test_parameter_count_matches_nern_formula():
    h, emb = 180, 240
    predictor = build_predictor(PredictorConfig(input_dim=emb, hidden=h, depth=3, kernel_sizes=(3,)))
    assert predictor.num_parameters() == 3 * h * h + (emb + 13) * h + 9


@pytest.mark.parametrize("kernel_size", [1, 3, 5, 7])
def test_output_shape_for_every_kernel_size(kernel_size):
    predictor = build_predictor(PredictorConfig(input_dim=24, hidden=16, kernel_sizes=(1, 3, 5, 7)))
    out = predictor(torch.randn(11, 24), kernel_size)
    assert out.shape == (11, kernel_size * kernel_size)


def test_missing_head_raises():
    predictor = build_predictor(PredictorConfig(input_dim=24, hidden=16, kernel_sizes=(3,)))
    with pytest.raises(KeyError):
        predictor(torch.randn(2, 24), 5)


def test_seeded_initialisation_is_reproducible():
    config = PredictorConfig(input_dim=12, hidden=8)
    a = build_predictor(config, seed=3).state_dict()
    b = build_predictor(config, seed=3).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_config_round_trip():
    config = PredictorConfig(input_dim=120, hidden=64, depth=2, kernel_sizes=(3, 1))
    assert PredictorConfig.from_dict(config.to_dict()) == config
    assert config.kernel_sizes == (1, 3)


@pytest.mark.parametrize("widths", [None, (7, 5, 6, 4)])
def test_features_from_parts_equal_features_of_the_joined_embeddings(widths):
    predictor = build_predictor(PredictorConfig(input_dim=12, hidden=8, widths=widths), seed=0)
    first, second = torch.randn(5, 8), torch.randn(3, 4)
    first_rows, second_rows = torch.randint(0, 5, (40,)), torch.randint(0, 3, (40,))
    joined = torch.cat([first[first_rows], second[second_rows]], dim=1)
    torch.testing.assert_close(predictor.features_from_parts(first, second, first_rows, second_rows),
                               predictor.features(joined), rtol=1e-5, atol=1e-6)  # fmt: skip
