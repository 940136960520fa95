# frozen_string_literal: true

require "test_helper"

# DuoRouting::Client#resolve_model against a real Self-Managed sidecar (DESIGN section 3, instance rules).
class SelfManagedTest < Minitest::Test
  include DuoRoutingTest
  include DuoRoutingTest::SelfHostedModels

  def test_features_without_a_setting_use_the_gitlab_default
    route = @client.resolve_model(user_id: 1, feature: "code_completions")
    assert_equal :PROVIDER_GITLAB_AI_GATEWAY, route.provider
    assert_equal :SELECTION_SOURCE_GITLAB_DEFAULT, route.source
    assert route.gitlab_default
  end

  def test_self_hosted_and_disabled_feature_settings
    name, id = register_model
    @admin.set_feature("code_generations", :FEATURE_PROVIDER_SELF_HOSTED, self_hosted_model_id: id)
    route = @client.resolve_model(user_id: 1, feature: "code_generations")
    assert_equal :PROVIDER_SELF_HOSTED, route.provider
    assert_equal "custom_openai/#{name}", route.model_identifier
    assert_equal :SELECTION_SOURCE_FEATURE_SETTING, route.source
    assert_equal id, route.self_hosted_model_id
    assert_equal @upstream.endpoint, route.self_hosted_model_endpoint
    assert_equal :PLATFORM_OPENAI_COMPATIBLE, route.self_hosted_model_platform

    @admin.set_feature("code_generations", :FEATURE_PROVIDER_DISABLED)
    disabled = @client.resolve_model(user_id: 1, feature: "code_generations")
    assert_equal :PROVIDER_DISABLED, disabled.provider, "a disabled feature is an answer, not an error"
  ensure
    @admin.set_feature("code_generations", :FEATURE_PROVIDER_VENDORED)
  end
end
