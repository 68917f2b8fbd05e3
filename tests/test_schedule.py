"""The stage schedule: boundaries exactly as the paper (arXiv 2605.26111) writes them, FLUX's shifted sigmas."""

import math

import pytest
import torch
from dla_flux_oracle import flux_shifted_sigmas

from dla_core.errors import DLAInputError
from dla_core.flux.sampling import calculate_mu, image_seq_len
from dla_core.schedule import (
    StageTaus,
    describe_schedule,
    stage_for_sigma,
    stage_step_counts,
    stages_for_sigmas,
    validate_taus,
)


def test_t_equal_to_tau1_is_stage_1():
    assert stage_for_sigma(0.95, 0.95, 0.85) == 1


def test_t_just_below_tau1_is_stage_2():
    assert stage_for_sigma(math.nextafter(0.95, 0.0), 0.95, 0.85) == 2


def test_t_equal_to_tau2_is_stage_2():
    assert stage_for_sigma(0.85, 0.95, 0.85) == 2


def test_t_just_below_tau2_is_stage_3():
    assert stage_for_sigma(math.nextafter(0.85, 0.0), 0.95, 0.85) == 3


def test_equal_taus_leave_no_stage_2():
    sigmas = [i / 100 for i in range(100, -1, -1)]
    stages = stages_for_sigmas(sigmas, 0.5, 0.5, include_last=True)
    assert 2 not in stages
    assert stages == [1 if s >= 0.5 else 3 for s in sigmas]


def test_taus_zero_make_every_step_mllm_only():
    sigmas = flux_shifted_sigmas(1024, 1024, 28)
    assert stages_for_sigmas(sigmas, 0.0, 0.0) == [1] * 28


def test_taus_zero_classify_a_trailing_zero_sigma_as_stage_1():
    assert stage_for_sigma(0.0, 0.0, 0.0) == 1


def test_taus_one_make_pure_noise_stage_1_and_the_rest_identity_only():
    sigmas = flux_shifted_sigmas(1024, 1024, 28)
    assert stages_for_sigmas(sigmas, 1.0, 1.0) == [1] + [3] * 27


def test_vectorised_stages_equal_scalar_stages():
    sigmas = torch.linspace(1.0, 0.0, 57)
    for tau1, tau2 in [(0.95, 0.85), (0.97, 0.9), (0.85, 0.7), (0.5, 0.5), (1.0, 0.0)]:
        expected = [stage_for_sigma(float(s), tau1, tau2) for s in sigmas]
        assert stages_for_sigmas(sigmas, tau1, tau2, include_last=True) == expected


def test_trailing_sigma_is_dropped_by_default():
    sigmas = [1.0, 0.9, 0.8, 0.0]
    assert stages_for_sigmas(sigmas, 0.95, 0.85) == [1, 2, 3]
    assert stages_for_sigmas(sigmas, 0.95, 0.85, include_last=True) == [1, 2, 3, 3]


def test_tensor_and_list_sigmas_give_the_same_stages():
    sigmas = flux_shifted_sigmas(768, 1024, 20)
    assert stages_for_sigmas(torch.tensor(sigmas), 0.95, 0.85) == stages_for_sigmas(sigmas, 0.95, 0.85)


def test_flux_shift_at_1024_squared_is_max_shift():
    assert calculate_mu(image_seq_len(1024, 1024)) == pytest.approx(1.15)
    assert calculate_mu(image_seq_len(256, 256)) == pytest.approx(0.5)


def test_flux_sigmas_start_at_one_end_at_zero_and_decrease():
    sigmas = flux_shifted_sigmas(1024, 1024, 28)
    assert len(sigmas) == 29
    assert sigmas[0] == 1.0 and sigmas[-1] == 0.0
    assert all(a > b for a, b in zip(sigmas, sigmas[1:]))


def test_flux_1024_28_steps_split_4_7_17_as_in_the_paper():
    sigmas = flux_shifted_sigmas(1024, 1024, 28)
    assert stage_step_counts(sigmas, 0.95, 0.85) == (4, 7, 17)


def test_describe_schedule_for_the_paper_default():
    sigmas = flux_shifted_sigmas(1024, 1024, 28)
    assert describe_schedule(sigmas, 0.95, 0.85) == "steps 1-4: MLLM only; 5-11: MLLM + identity; 12-28: identity only"


def test_describe_schedule_omits_empty_stages():
    sigmas = flux_shifted_sigmas(1024, 1024, 28)
    assert describe_schedule(sigmas, 0.0, 0.0) == "steps 1-28: MLLM only"


def test_describe_schedule_names_a_single_first_step():
    assert (
        describe_schedule([1.0, 0.5, 0.2, 0.0], 1.0, 0.4) == "step 1: MLLM only; 2: MLLM + identity; 3: identity only"
    )


@pytest.mark.parametrize("tau1,tau2", [(0.85, 0.95), (0.5, 0.6)])
def test_taus_out_of_order_are_refused_with_the_rule(tau1, tau2):
    with pytest.raises(DLAInputError, match=rf"tau1={tau1} and tau2={tau2} break the rule 0 <= tau2 <= tau1 <= 1"):
        validate_taus(tau1, tau2)


@pytest.mark.parametrize("tau1,tau2", [(1.2, 0.5), (0.5, -0.1)])
def test_taus_out_of_range_are_refused(tau1, tau2):
    with pytest.raises(DLAInputError, match="0 <= tau2 <= tau1 <= 1"):
        stages_for_sigmas([1.0, 0.0], tau1, tau2)


def test_nan_tau_is_refused():
    with pytest.raises(DLAInputError, match="tau1 must be a number"):
        validate_taus(float("nan"), 0.5)


def test_nan_sigma_is_refused():
    with pytest.raises(DLAInputError, match="NaN"):
        stages_for_sigmas([1.0, float("nan"), 0.0], 0.95, 0.85)


def test_numpy_and_tensor_values_are_accepted():
    import numpy as np

    assert stage_for_sigma(torch.tensor(0.9), np.float32(0.95), torch.tensor(0.85)) == 2


def test_text_tau_is_refused():
    with pytest.raises(DLAInputError, match="tau2 must be a number between 0 and 1, got '0.5'"):
        validate_taus(0.9, "0.5")


def test_stage_taus_refuse_bad_taus_when_built():
    with pytest.raises(DLAInputError, match="0 <= tau2 <= tau1 <= 1"):
        StageTaus(0.5, 0.9)


def test_stage_taus_give_the_stage_of_stage_for_sigma_at_every_boundary():
    taus = StageTaus(0.95, 0.85)
    for t in (1.0, 0.95, math.nextafter(0.95, 0.0), 0.85, math.nextafter(0.85, 0.0), 0.0):
        assert taus.stage(t) == stage_for_sigma(t, 0.95, 0.85)


def test_stage_taus_list_every_stage_a_sampler_can_visit_between_two_times():
    assert StageTaus(0.95, 0.85).stages_in_range(1.0, 0.0) == (1, 2, 3)
    assert StageTaus(0.95, 0.85).stages_in_range(0.9, 0.86) == (2,)
    assert StageTaus(0.5, 0.5).stages_in_range(1.0, 0.0) == (1, 3)
