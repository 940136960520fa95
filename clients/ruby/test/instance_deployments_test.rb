# frozen_string_literal: true

require "test_helper"

# DuoRouting::Client against a Dedicated sidecar with self-hosted models, and a hybrid Self-Managed sidecar
# (instance.self_hosted_ai_gateway: no GitLab-managed default), DESIGN section 3.
class InstanceDeploymentsTest < Minitest::Test
  include DuoRoutingTest

  def setup
    @dedicated = DuoRouting::Client.new(address: DuoRoutingTest.sidecar_address(:dedicated), secret: nil)
    @dedicated_admin = Admin.new(DuoRoutingTest.sidecar_address(:dedicated))
    @hybrid = DuoRouting::Client.new(address: DuoRoutingTest.sidecar_address(:hybrid), secret: nil)
  end

  def teardown
    @dedicated.close
    @hybrid.close
  end

  def test_dedicated_serves_a_feature_by_a_self_hosted_model
    name = "dedicated-#{SecureRandom.hex(3)}"
    id = @dedicated_admin.create_openai_model(name, "http://127.0.0.1:9/v1")
    @dedicated_admin.set_feature("duo_chat", :FEATURE_PROVIDER_SELF_HOSTED, self_hosted_model_id: id)
    route = @dedicated.resolve_model(user_id: 1, feature: "duo_chat_explain_code")
    assert_equal :PROVIDER_SELF_HOSTED, route.provider
    assert_equal :SELECTION_SOURCE_FEATURE_SETTING, route.source
    assert_equal "custom_openai/#{name}", route.model_identifier
    assert_equal "duo_chat", route.effective_feature
  ensure
    @dedicated_admin.set_feature("duo_chat", :FEATURE_PROVIDER_VENDORED)
  end

  def test_answers_name_the_default_group_and_deprecated_pins
    route = @dedicated.resolve_model(user_id: 7, feature: "glab_ask_git_command")
    assert_equal "__default__glab_ask_git_command", route.default_model_group
    refute_equal route.default_model_group, route.model_identifier
    assert route.gitlab_default

    listed = @dedicated_admin.call(:list_selectable_models,
                                   V1::ListSelectableModelsRequest.new(feature: "duo_agent_platform"))
    deprecated = listed.features.first.selectable_models.find { |m| !m.removal_version.empty? }
    pin_agents(deprecated.identifier)
    route = @dedicated.resolve_model(user_id: 7, feature: "duo_agent_platform")
    assert_equal deprecated.identifier, route.model_identifier
    assert route.pinned_model_deprecated
    assert_equal deprecated.removal_version, route.deprecation_removal_version
  ensure
    pin_agents("")
  end

  def pin_agents(model)
    @dedicated_admin.call(:update_instance_model_selection,
                          V1::UpdateInstanceModelSelectionRequest.new(feature: "duo_agent_platform",
                                                                      offered_model_ref: model))
  end

  def test_hybrid_feature_without_a_model_raises_no_model_configured
    error = assert_raises(DuoRouting::NoModelConfiguredError) do
      @hybrid.resolve_model(user_id: 1, feature: "code_generations")
    end
    assert_kind_of DuoRouting::FailedPreconditionError, error
    assert_equal :FAILED_PRECONDITION, error.code
    assert_equal "NO_MODEL_CONFIGURED", error.reason
    assert_equal "code_generations", error.feature
    assert_equal "self_hosted_ai_gateway", error.cause
    assert_nil error.pinned_model
    assert_match(/assigns a self-hosted model/, error.message)
  end
end
