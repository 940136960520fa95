# frozen_string_literal: true

require "openssl"

module DuoRouting
  # Gitaly-style v2 bearer tokens: "v2.<hex HMAC-SHA256(secret, unix_ts)>.<unix_ts>".
  # The secret never travels; the sidecar recomputes the HMAC and accepts timestamps within +/-30 s,
  # so a token is signed afresh for every call (and every retry).
  module Token
    PREFIX = "v2"

    module_function

    def sign(secret, time: Time.now)
      timestamp = time.to_i.to_s
      "#{PREFIX}.#{OpenSSL::HMAC.hexdigest('SHA256', secret, timestamp)}.#{timestamp}"
    end

    # The value of the "authorization" gRPC metadata entry.
    def authorization(secret, time: Time.now)
      "Bearer #{sign(secret, time: time)}"
    end
  end
end
