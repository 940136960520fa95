# frozen_string_literal: true

require "test_helper"

# DuoRouting::Client#resolve_model against a real GitLab.com sidecar (DESIGN section 3, GITLAB_COM rules).
# Each test uses its own users and namespaces: they share one sidecar and run in random order.
class GitlabComTest < Minitest::Test
  include DuoRoutingTest

  def setup
    address = DuoRoutingTest.sidecar_address(:gitlab_com)
    @admin = Admin.new(address)
    @client = DuoRouting::Client.new(address: address, secret: nil)
  end

  def teardown
    @client.close
  end

  def test_user_without_seats_gets_the_gitlab_default
    route = @client.resolve_model(user_id: 501, feature: "duo_chat")

    assert_equal :PROVIDER_GITLAB_AI_GATEWAY, route.provider
    assert_equal :SELECTION_SOURCE_GITLAB_DEFAULT, route.source
    assert route.gitlab_default
    refute_empty route.model_identifier
    assert_equal 0, route.governing_namespace_id
    refute route.default_namespace_prompt
  end

  def test_context_namespace_pin_wins_and_prompts_a_multi_seat_user
    @admin.assign_seats([[601, 6010], [601, 6020]])
    @admin.pin_namespace_model(6020, "duo_chat", "claude_sonnet_4_6")

    pinned = @client.resolve_model(user_id: 601, feature: "duo_chat", root_namespace_id: 6020)
    assert_equal "claude_sonnet_4_6", pinned.model_identifier
    assert_equal :SELECTION_SOURCE_CONTEXT_NAMESPACE, pinned.source
    assert_equal 6020, pinned.governing_namespace_id
    refute pinned.gitlab_default
    assert pinned.default_namespace_prompt, "two seats and no default namespace: Rails shows the banner"

    unpinned = @client.resolve_model(user_id: 601, feature: "duo_chat", root_namespace_id: 6010)
    assert unpinned.gitlab_default
    refute_equal "claude_sonnet_4_6", unpinned.model_identifier
    assert_equal 6010, unpinned.governing_namespace_id
  end

  def test_sub_feature_follows_the_namespace_duo_chat_pin
    @admin.assign_seats([[602, 6030]])
    @admin.pin_namespace_model(6030, "duo_chat", "claude_sonnet_4_6")

    route = @client.resolve_model(user_id: 602, feature: "duo_chat_explain_code", root_namespace_id: 6030)
    assert_equal "claude_sonnet_4_6", route.model_identifier
    assert_equal "duo_chat", route.effective_feature
  end

  def test_no_context_request_of_a_single_seat_user_uses_that_namespace
    @admin.assign_seats([[701, 7010]])
    @admin.pin_namespace_model(7010, "duo_chat", "claude_sonnet_4_6")

    route = @client.resolve_model(user_id: 701, feature: "duo_chat")
    assert_equal "claude_sonnet_4_6", route.model_identifier
    assert_equal :SELECTION_SOURCE_SOLE_SEAT_NAMESPACE, route.source
    assert_equal 7010, route.governing_namespace_id
    refute route.default_namespace_prompt
  end

  def test_default_namespace_required_is_a_ruby_exception_rails_can_show
    @admin.assign_seats([[801, 8010], [801, 8020]])
    @admin.pin_namespace_model(8020, "duo_chat", "claude_sonnet_4_6")
    @admin.set_default_namespace(801, 0) # none yet, also when this file runs again on the same sidecar

    error = assert_raises(DuoRouting::DefaultNamespaceRequiredError) do
      @client.resolve_model(user_id: 801, feature: "duo_chat")
    end
    assert_equal DEFAULT_NAMESPACE_REQUIRED_MESSAGE, error.message
    assert_equal [8010, 8020], error.candidate_namespace_ids
    assert_equal 801, error.user_id
    assert_equal "duo_chat", error.feature
    assert_equal :FAILED_PRECONDITION, error.code
    assert_equal "DEFAULT_NAMESPACE_REQUIRED", error.reason
    assert_equal DuoRouting::ERROR_DOMAIN, error.domain
    assert_kind_of DuoRouting::FailedPreconditionError, error
    assert_equal ["users/801"], error.precondition_violations.map(&:subject)

    # Complete routes the same way, and fails the same way before any text.
    streamed = assert_raises(DuoRouting::DefaultNamespaceRequiredError) do
      @client.complete(user_id: 801, feature: "duo_chat", messages: [{ role: "user", content: "Hi" }]) { flunk }
    end
    assert_equal DEFAULT_NAMESPACE_REQUIRED_MESSAGE, streamed.message
    assert_equal [8010, 8020], streamed.candidate_namespace_ids

    # Features whose answer does not depend on the namespace keep working.
    unanimous = @client.resolve_model(user_id: 801, feature: "code_completions")
    assert_equal :SELECTION_SOURCE_UNANIMOUS_SEAT_NAMESPACES, unanimous.source
    assert unanimous.default_namespace_prompt

    # Once the user picks a default namespace, the same request is answered from it.
    @admin.set_default_namespace(801, 8020)
    route = @client.resolve_model(user_id: 801, feature: "duo_chat")
    assert_equal "claude_sonnet_4_6", route.model_identifier
    assert_equal :SELECTION_SOURCE_DEFAULT_NAMESPACE, route.source
    refute route.default_namespace_prompt
  end

  def test_invalid_input_raises_invalid_argument_naming_the_field
    unknown = assert_raises(DuoRouting::InvalidArgumentError) do
      @client.resolve_model(user_id: 901, feature: "no_such_feature")
    end
    assert_equal "UNKNOWN_FEATURE", unknown.reason
    assert_equal ["feature"], unknown.field_violations.map(&:field)
    assert_match(/unknown feature 'no_such_feature'/, unknown.message)

    bad_user = assert_raises(DuoRouting::InvalidArgumentError) do
      @client.resolve_model(user_id: 0, feature: "duo_chat")
    end
    assert_equal ["user_id"], bad_user.field_violations.map(&:field)
  end

  def test_deadline_and_retry_do_not_hide_a_healthy_answer
    # A generous per-call timeout is honoured as well as the default one.
    route = @client.resolve_model(user_id: 502, feature: "code_completions", timeout: 5)
    assert route.gitlab_default
  end
end
