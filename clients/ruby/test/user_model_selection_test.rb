# frozen_string_literal: true

require "test_helper"

# User model selection (DESIGN section 3) through DuoRouting::Client against real GitLab.com and Dedicated
# sidecars: user_selected_model in, user_selection out, and the model picker. Model identifiers come from the
# sidecar's own catalog (ListSelectableModels), so the test holds for whichever catalog it ships.
class UserModelSelectionTest < Minitest::Test
  include DuoRoutingTest

  AGENTIC = "duo_agent_platform_agentic_chat"

  def setup
    @com = DuoRoutingTest.sidecar_address(:gitlab_com)
    @admin = Admin.new(@com)
    @client = DuoRouting::Client.new(address: @com, secret: nil)
    feature = @admin.call(:list_selectable_models, V1::ListSelectableModelsRequest.new(feature: AGENTIC)).features.first
    default = feature.default_model.identifier
    @first, @second, @third = feature.selectable_models.map(&:identifier)
                                     .reject { |m| m == default || m.start_with?("__default__") }.first(3)
  end

  def teardown
    @client.close
  end

  def allowlist(namespace_id, refs)
    @admin.call(:update_namespace_model_allowlist,
                V1::UpdateNamespaceModelAllowlistRequest.new(namespace_id: namespace_id, feature: AGENTIC,
                                                             enabled: true, model_refs: refs))
  end

  def test_an_allowed_choice_serves_the_request
    @admin.pin_namespace_model(9110, AGENTIC, @first)
    reply = allowlist(9110, [@second, "no_such_model"])
    assert_equal [["no_such_model", "UNKNOWN_MODEL"]], reply.dropped_model_refs.map { |d| [d.model_ref, d.reason] }

    route = @client.resolve_model(user_id: 911, feature: AGENTIC, root_namespace_id: 9110,
                                  user_selected_model: @second)
    assert_equal @second, route.model_identifier
    assert_equal :SELECTION_SOURCE_USER, route.source
    assert_equal :USER_SELECTION_APPLIED, route.user_selection
    assert_equal 9110, route.governing_namespace_id
  end

  def test_a_choice_is_never_an_error_and_says_why_it_was_not_used
    @admin.pin_namespace_model(9120, AGENTIC, @first)

    pinned = @client.resolve_model(user_id: 912, feature: AGENTIC, root_namespace_id: 9120,
                                   user_selected_model: @second)
    assert_equal @first, pinned.model_identifier
    assert_equal :USER_SELECTION_IGNORED_PINNED, pinned.user_selection

    unknown = @client.resolve_model(user_id: 912, feature: AGENTIC, root_namespace_id: 9130,
                                    user_selected_model: "no_such_model")
    assert_equal :USER_SELECTION_IGNORED_UNKNOWN_MODEL, unknown.user_selection
    assert_equal :SELECTION_SOURCE_CONTEXT_NAMESPACE, unknown.source

    none = @client.resolve_model(user_id: 912, feature: AGENTIC, root_namespace_id: 9130)
    assert_equal :USER_SELECTION_UNSPECIFIED, none.user_selection
  end

  def test_the_model_picker
    @admin.assign_seats([[914, 9140]])
    @admin.pin_namespace_model(9140, AGENTIC, @first)
    hard = @client.list_user_selectable_models(user_id: 914, feature: AGENTIC)
    refute hard.user_may_choose
    assert_equal :USER_SELECTION_IGNORED_PINNED, hard.choice_unavailable_reason
    assert_equal @first, hard.pinned_model.identifier
    assert_equal 9140, hard.governing_namespace_id

    allowlist(9140, [@third])
    picker = @client.list_user_selectable_models(user_id: 914, feature: AGENTIC, root_namespace_id: 9140)
    assert picker.user_may_choose
    assert_equal [@first, @third].sort, picker.selectable_models.map(&:identifier).sort
    assert_equal @first, picker.default_model.identifier
    refute_empty picker.selectable_models.first.name
    assert_nil picker.pinned_model
  end

  def test_picker_errors_are_ruby_exceptions
    error = assert_raises(DuoRouting::InvalidArgumentError) do
      @client.list_user_selectable_models(user_id: 0, feature: AGENTIC)
    end
    assert_equal :INVALID_ARGUMENT, error.code
    assert_equal ["user_id"], error.field_violations.map(&:field)
  end
end
