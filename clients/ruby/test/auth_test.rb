# frozen_string_literal: true

require "test_helper"

# Token authentication against a real sidecar started with auth.client_secret_file (DESIGN section 5).
# tests/test_ruby_client.py runs this file and passes the secret in DUO_SIDECAR_CLIENT_SECRET.
class AuthTest < Minitest::Test
  include DuoRoutingTest

  def setup
    @address = DuoRoutingTest.sidecar_address(:self_managed)
    @secret = ENV.fetch("DUO_SIDECAR_CLIENT_SECRET")
  end

  def resolve(**client_options)
    client = DuoRouting::Client.new(address: @address, **client_options)
    client.resolve_model(user_id: 1, feature: "duo_chat")
  ensure
    client&.close
  end

  def test_the_client_secret_is_accepted
    assert_equal :PROVIDER_GITLAB_AI_GATEWAY, resolve(secret: @secret).provider
  end

  def test_missing_token_is_unauthenticated
    assert_raises(DuoRouting::UnauthenticatedError) { resolve(secret: nil) }
  end

  def test_token_signed_with_another_secret_is_permission_denied
    error = assert_raises(DuoRouting::PermissionDeniedError) { resolve(secret: "#{@secret}-wrong") }
    assert_equal "AUTH_TOKEN_INVALID", error.reason
  end

  def test_token_older_than_the_allowed_skew_is_permission_denied
    error = assert_raises(DuoRouting::PermissionDeniedError) { resolve(secret: @secret, clock: -> { Time.now - 120 }) }
    assert_equal "AUTH_TOKEN_EXPIRED", error.reason
  end
end
