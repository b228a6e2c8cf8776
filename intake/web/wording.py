"""The words of the intake's web pages, in French and English: one table per page, over the words they share.

Each table maps a language to its texts by key; a key ending in ``_title`` is a page's ``<h1>`` and ``<title>``,
``_body`` its paragraph. Some texts hold ``{placeholders}`` filled by the page (``str.format``) before the
template escapes them. The texts are the page's visible words: keep French typography (non-breaking spaces
before ``:;?!`` and inside ``« »``) and say nothing a stranger could learn about someone else's request.
"""

from __future__ import annotations

from intake.submission import MAX_DETAILS, MAX_NAME

__all__ = ["ANSWER", "COMMON", "DOWNLOAD", "FORM", "LANGUAGES", "STATUS", "VERIFY", "zone_words"]

LANGUAGES = ("fr", "en")
"""The languages of the pages, the default first."""


def zone_words(timezone: str, lang: str) -> str:
    """``Europe/Paris`` -> « heure de Paris » / "Paris time"; ``UTC`` as is."""
    if "/" not in timezone:
        return timezone
    city = timezone.rsplit("/", 1)[-1].replace("_", " ")
    return f"heure de {city}" if lang == "fr" else f"{city} time"

COMMON: dict[str, dict[str, str]] = {
    "en": {
        "bad_form_title": "The form could not be read",
        "form_invalid_title": "This form is not valid",
        "invalid_title": "This link is not valid",
        "locked_title": "Too many attempts",
        "too_large_title": "The form sent is too large",
        "code_hint": "Letters and digits, for example K7QM-4XPD, with or without the dash.",
    },
    "fr": {
        "bad_form_title": "Le formulaire n’a pas pu être lu",
        "form_invalid_title": "Ce formulaire n’est pas valide",
        "invalid_title": "Ce lien n’est pas valide",
        "locked_title": "Trop de tentatives",
        "too_large_title": "Le formulaire envoyé est trop volumineux",
        "code_hint": "Lettres et chiffres, par exemple K7QM-4XPD, avec ou sans le tiret.",
    },
}
"""Words every page uses alike."""


DOWNLOAD: dict[str, dict[str, str]] = {
    "en": {
        **COMMON["en"],
        "form_title": "Download your data",
        "form_intro": "Your data is ready. To protect it, enter the code from the email we sent you with this link.",
        "form_label": "Download code",
        "form_button": "Download (ZIP file)",
        "form_expiry": "This link works until {expiry} inclusive ({zone}).",
        "wrong_answer": "This code is not correct. Check the email we sent you and try again.",
        "invalid_body": "Check that you copied the whole link from our email.",
        "expired_title": "This link has expired; ask for a new one",
        "expired_body": "For your security, download links only work for a limited time. Reply to our email to get "
        "a new one.",
        "gone_title": "This download is no longer available; ask for a new one",
        "gone_body": "The files were deleted. Reply to our email to get a new copy of your data.",
        "locked_body": "For your security, this download is locked for {minutes} minutes. Try again later.",
        "closed_title": "This download is locked after too many wrong codes",
        "closed_body": "For your security, this link no longer works. Reply to our email to get a new copy of your "
        "data.",
        "form_invalid_body": "Open the link from our email again and fill in the form on that page.",
        "retry_body": "Open the link from our email again and try once more.",
        "not_found_title": "Page not found",
        "not_allowed_title": "Method not allowed",
        "error_title": "A temporary problem prevented the download",
        "error_body": "Please try again later.",
    },
    "fr": {
        **COMMON["fr"],
        "form_title": "Télécharger vos données",
        "form_intro": "Vos données sont prêtes. Pour les protéger, saisissez le code reçu avec ce lien dans notre "
        "courriel.",
        "form_label": "Code de téléchargement",
        "form_button": "Télécharger (fichier ZIP)",
        "form_expiry": "Ce lien est valable jusqu’au {expiry} inclus ({zone}).",
        "wrong_answer": "Ce code n’est pas correct. Vérifiez notre courriel et réessayez.",
        "invalid_body": "Vérifiez que vous avez copié le lien complet depuis notre courriel.",
        "expired_title": "Ce lien a expiré\u00a0; demandez-en un nouveau",
        "expired_body": "Pour votre sécurité, les liens de téléchargement ne fonctionnent qu’un temps limité. "
        "Répondez à notre courriel pour en obtenir un nouveau.",
        "gone_title": "Ce téléchargement n’est plus disponible\u00a0; demandez-en un nouveau",
        "gone_body": "Les fichiers ont été supprimés. Répondez à notre courriel pour obtenir une nouvelle copie de "
        "vos données.",
        "locked_body": "Pour votre sécurité, ce téléchargement est bloqué pendant {minutes}\u00a0minutes. Réessayez "
        "plus tard.",
        "closed_title": "Ce téléchargement est bloqué après trop de codes erronés",
        "closed_body": "Pour votre sécurité, ce lien ne fonctionne plus. Répondez à notre courriel pour obtenir une "
        "nouvelle copie de vos données.",
        "form_invalid_body": "Ouvrez de nouveau le lien de notre courriel et remplissez le formulaire de cette page.",
        "retry_body": "Ouvrez de nouveau le lien de notre courriel et réessayez.",
        "not_found_title": "Page introuvable",
        "not_allowed_title": "Méthode non autorisée",
        "error_title": "Un problème temporaire a empêché le téléchargement",
        "error_body": "Veuillez réessayer plus tard.",
    },
}
"""``/exports/{token}``, and the app's own error pages (404, 405, 500)."""


VERIFY: dict[str, dict[str, str]] = {
    "en": {
        **COMMON["en"],
        "title": "Confirm your request",
        "intro": "To protect your data, we check that the request really comes from the owner of the email address "
        "it was sent from. Press the button to confirm that you made request {reference}.",
        "button": "I confirm this request",
        "code_title": "Confirm your request with a code",
        "code_intro": "Enter the reference of your request and the 8-character code from our email.",
        "reference": "Request reference",
        "reference_hint": "For example dsr-2026-11-7KQ3FJ.",
        "code": "Confirmation code",
        "wrong": "This reference and code do not match. Check our email and try again, or use the link in it.",
        "confirmed_title": "Thank you: your request is confirmed",
        "confirmed_body": "We are now handling it and will reply by {deadline} at the latest.",
        "already_title": "This request was already confirmed",
        "already_body": "There is nothing more to do. We will reply by email.",
        "closed_title": "This request is closed",
        "closed_body": "It can no longer be confirmed. You can make a new request at any time.",
        "invalid_body": "Check that you copied the whole link from our email, or enter the code on the confirmation "
        "page.",
        "expired_title": "This link has expired",
        "expired_body": "You can make a new request at any time.",
        "locked_body": "For your security, confirmation is locked for {minutes} minutes. Try again later.",
        "form_invalid_body": "Open the link from our email again.",
        "error_title": "A temporary problem prevented the confirmation",
        "error_body": "Please try again in a few minutes.",
    },
    "fr": {
        **COMMON["fr"],
        "title": "Confirmez votre demande",
        "intro": "Pour protéger vos données, nous vérifions que la demande vient bien du titulaire de l’adresse "
        "électronique qui l’a envoyée. Appuyez sur le bouton pour confirmer que vous avez fait la demande "
        "{reference}.",
        "button": "Je confirme cette demande",
        "code_title": "Confirmez votre demande avec un code",
        "code_intro": "Saisissez la référence de votre demande et le code de 8\u00a0caractères de notre courriel.",
        "reference": "Référence de la demande",
        "reference_hint": "Par exemple dsr-2026-11-7KQ3FJ.",
        "code": "Code de confirmation",
        "wrong": "Cette référence et ce code ne correspondent pas. Vérifiez notre courriel et réessayez, ou "
        "utilisez le lien qu’il contient.",
        "confirmed_title": "Merci\u00a0: votre demande est confirmée",
        "confirmed_body": "Nous la traitons et vous répondrons au plus tard le {deadline}.",
        "already_title": "Cette demande était déjà confirmée",
        "already_body": "Vous n’avez plus rien à faire. Nous vous répondrons par courriel.",
        "closed_title": "Cette demande est clôturée",
        "closed_body": "Elle ne peut plus être confirmée. Vous pouvez faire une nouvelle demande à tout moment.",
        "invalid_body": "Vérifiez que vous avez copié le lien complet de notre courriel, ou saisissez le code sur "
        "la page de confirmation.",
        "expired_title": "Ce lien a expiré",
        "expired_body": "Vous pouvez faire une nouvelle demande à tout moment.",
        "locked_body": "Pour votre sécurité, la confirmation est bloquée pendant {minutes}\u00a0minutes. Réessayez "
        "plus tard.",
        "form_invalid_body": "Ouvrez de nouveau le lien de notre courriel.",
        "error_title": "Un problème temporaire a empêché la confirmation",
        "error_body": "Veuillez réessayer dans quelques minutes.",
    },
}
"""``/verify/{token}`` and ``/verify``."""


FORM: dict[str, dict[str, str]] = {
    "en": {
        **COMMON["en"],
        "language_name": "English",
        "switch_label": "Language",
        "title": "Make a request about your personal data",
        "error_prefix": "Error: ",
        "intro_named": "Use this form to exercise your rights over the personal data {controller} holds about you, "
        "as the General Data Protection Regulation (GDPR) provides. It is free of charge.",
        "intro_generic": "Use this form to exercise your rights over the personal data we hold about you, as the "
        "General Data Protection Regulation (GDPR) provides. It is free of charge.",
        "required_note": "Fields marked “required” must be filled in.",
        "required": "required",
        "optional": "optional",
        "kind_legend": "What would you like to do?",
        "kind_access": "See your data",
        "kind_access_hint": "Get a copy of your data and know how it is used.",
        "kind_rectification": "Correct your data",
        "kind_rectification_hint": "Have wrong or incomplete data corrected. Under “Corrections”, choose each "
        "piece of information to correct and give the correct value; for anything else, describe it in the "
        "“Details” box.",
        "kind_erasure": "Erase your data",
        "kind_erasure_hint": "Have your data deleted. We keep only what the law requires us to keep (invoices, for "
        "example), and we will tell you what and until when.",
        "kind_portability": "Take your data elsewhere",
        "kind_portability_hint": "Receive the data you gave us in a format a computer can read, to pass it on to "
        "another service.",
        "kind_stop_marketing": "Stop receiving our marketing",
        "kind_stop_marketing_hint": "No more newsletters, offers, promotional calls or messages, from any of our "
        "services. This is done at once, without any question or proof asked, and your address is never added back.",
        "kind_objection": "Object to another use of your data",
        "kind_consent_withdrawal": "Withdraw a consent you gave us",
        "kind_consent_withdrawal_hint": "Tick what you no longer agree to (none ticked: all of them). No other proof "
        "is asked and it is done today; what was done before stays lawful (Article 7(3) GDPR).",
        "purposes_legend": "Consents to withdraw",
        "kind_objection_hint": "We use some data on the basis of our legitimate interests (statistics, fraud "
        "prevention, for example). Tell us in the “Details” box which use you object to and, if you wish, why: we stop "
        "unless we have compelling reasons, which we would explain to you.",
        "kind_post_mortem": "The data of a person who has died",
        "kind_post_mortem_hint": "You are an heir, the executor of the estate, or the person they designated: have "
        "their accounts closed and their data erased, or ask for the information needed to settle the estate. Fill "
        "in “A person who has died” below; we will ask you for the death certificate and proof of who you are for "
        "them (French law, Article 85 of the loi Informatique et Libertés).",
        "deceased_legend": "A person who has died (only for a request about their data)",
        "deceased_hint": "The email address they used with us, so that we find their data. Your own address above is "
        "the one we write to.",
        "deceased_email_label": "Their email address",
        "deceased_name_label": "Their full name",
        "quality_label": "You are",
        "quality_heir": "an heir",
        "quality_executor": "the executor of the estate (or the notary)",
        "quality_designated": "the person they designated in their instructions",
        "err_deceased_missing": "Enter the email address of the person who has died.",
        "err_deceased_invalid": "Enter a valid email address for the person who has died, like name@example.com.",
        "err_deceased_self": "This is your own address: enter the address of the person who has died.",
        "err_quality": "Choose who you are for the person who has died.",
        "documents_label": "Documents",
        "documents_hint": "You may attach here the death certificate and the proof that you are an heir, the "
        "executor of the estate or the person designated in their directives: up to 5 files, PDF, JPEG or PNG, 10 MB "
        "each and 20 MB in all. Otherwise we will ask you for them by email. They are used for this check only and "
        "deleted once it is done.",
        "err_file_type": "Each document must be a PDF, JPEG or PNG file. Nothing was recorded: choose your files "
        "again.",
        "err_file_large": "Each document must be 10 MB or smaller. Nothing was recorded: choose your files again.",
        "err_files_count": "Send at most 5 documents. Nothing was recorded: choose your files again.",
        "err_files_again": "Your request was not sent, so your documents were not kept: choose them again.",
        "err_documents_off": "Documents cannot be sent with this form: send your request without them and reply to "
        "our email with them.",
        "files_too_large_title": "Your documents are too large",
        "files_too_large_body": "Send at most 20 MB of documents in all (10 MB each); nothing was recorded. You may "
        "also send your request without them and reply to our email with them.",
        "kind_restriction": "Restrict the use of your data",
        "kind_restriction_hint": "Have your data kept but no longer used, for a time: while you contest its "
        "accuracy, instead of an erasure, while you need it for a legal claim, or while we examine your objection. "
        "Choose the reason below. We tell you before the restriction ends.",
        "ground_legend": "Why you ask for a restriction (only to restrict the use of your data)",
        "ground_hint": "The reason decides how long the restriction lasts (Article 18(1) GDPR).",
        "ground_a": "You contest the accuracy of your data: restrict it while we verify it",
        "ground_b": "You consider our use of your data unlawful, but want it kept rather than erased",
        "ground_c": "We no longer need your data, but you need it to establish, exercise or defend a legal claim",
        "ground_d": "You objected to our use of your data: restrict it while we examine your objection",
        "err_ground": "For a restriction, choose the reason you ask for it.",
        "email_label": "Your email address",
        "email_hint": "We will write to this address to check that it is yours, then to answer you. Use the one you "
        "use with us.",
        "name_label": "Your full name",
        "name_hint": "It helps us find your data, for example if you changed your email address.",
        "details_label": "Details",
        "details_hint": "For a correction not listed under “Corrections”, tell us what is wrong and the correct "
        "value. Otherwise you may say which services or accounts are concerned.",
        "changes_legend": "Corrections (only to correct your data)",
        "changes_hint": "For each piece of information to correct, choose it and type the correct value. We then "
        "correct it in our systems without further exchange; whatever is described only in the “Details” box is "
        "handled by a member of our staff, which can take longer.",
        "change_field_label": "Information to correct",
        "change_value_label": "Correct value",
        "change_none": "(choose)",
        "field_first_name": "First name",
        "field_last_name": "Last name",
        "field_email": "Email address",
        "field_phone": "Telephone number",
        "field_address_line1": "Address (line 1)",
        "field_address_line2": "Address (line 2)",
        "field_postcode": "Postcode",
        "field_city": "City",
        "field_state": "State or region",
        "field_country": "Country",
        "reply_language": "We will reply in English.",
        "submit": "Send my request",
        "next_title": "What happens next?",
        "next_confirm": "We send you an email to confirm your email address: click the link in it.",
        "next_deadline": "We reply within one month of receiving your request. If it is complex, this can be "
        "extended by two months; we would tell you so, and why, before the first month ends.",
        "privacy_title": "What we do with the information in this form",
        "privacy_body": "We use it only to handle your request and to be able to prove that we answered it, as the "
        "law requires. We do not use it for anything else, such as marketing. The IP address of your connection is "
        "used only to prevent abuse (too many requests). This form sets a single cookie, needed for its security: "
        "it holds no personal data and expires after two hours.",
        "summary_title": "Your request was not sent",
        "err_kind": "Choose what you would like to do.",
        "err_email_missing": "Enter your email address.",
        "err_email_invalid": "Enter a valid email address, like name@example.com.",
        "err_name_long": f"Your name must be {MAX_NAME} characters or fewer.",
        "err_details_long": f"Details must be {MAX_DETAILS:,} characters or fewer.",
        "err_details_rectification": "For a correction, choose the information to correct and give the correct "
        "value, or tell us what is wrong and the correct value in the “Details” box.",
        "err_change_field": "Choose a piece of information from the list.",
        "err_change_field_missing": "Choose the information this correct value is for.",
        "err_change_twice": "This information is already chosen above: give its correct value once.",
        "err_change_value_missing": "Type the correct value.",
        "err_change_value_long": "The correct value must be 500 characters or fewer.",
        "err_change_email": "Type the correct email address in full, like name@example.com.",
        "err_control": "This field contains characters that are not allowed.",
        "err_duplicate": "This field was sent more than once. Fill it in again.",
        "err_unreadable": "The form could not be read. Fill it in again.",
        "err_rejected": "Your request could not be recorded. Check your answers and try again.",
        "err_rate_limited": "Too many requests were sent from your connection or for this address. Try again in "
        "{duration}.",
        "err_unavailable": "A temporary problem prevented us from recording your request. Your answers are kept "
        "below; try again in a few minutes.",
        "csrf_title": "This form has expired",
        "csrf_body": "For your security, the form is valid for two hours and only in the browser where it was "
        "opened. Reload the form and send your request again: nothing was recorded.",
        "too_large_body": "Shorten your details and send your request again: nothing was recorded.",
        "unsupported_body": "Send your request from the form on this page: nothing was recorded.",
        "back_to_form": "Back to the form",
        "confirm_title": "We have received your request",
        "confirm_reference": "Your request’s reference is in the email we send to the address you gave: quote it if "
        "you contact us.",
        "confirm_kind": "Your request:",
        "confirm_deadline": "Answer by:",
        "confirm_address": "We write to:",
        "confirm_typo": "Is this address wrong? Then our emails cannot reach you: send the form again with the right "
        "address.",
        "confirm_inbox": "Check your inbox: we have just written to you. If we need to confirm your email address, "
        "the email has a link, and we can only handle your request once you confirm it. Look in your spam folder "
        "too.",
        "confirm_extension": "If your request is complex, this can be extended by two months; we would tell you so, "
        "and why, before that date.",
        "invalid_confirmation_title": "This page is not valid",
        "invalid_confirmation_body": "If you have just sent a request, check your inbox: we have written to you. "
        "Otherwise, fill in the form.",
    },
    "fr": {
        **COMMON["fr"],
        "language_name": "Français",
        "switch_label": "Langue",
        "title": "Faire une demande sur vos données personnelles",
        "error_prefix": "Erreur\u00a0: ",
        "intro_named": "Ce formulaire vous permet d’exercer vos droits sur les données personnelles que "
        "{controller} détient sur vous, comme le prévoit le Règlement général sur la protection des données (RGPD). "
        "C’est gratuit.",
        "intro_generic": "Ce formulaire vous permet d’exercer vos droits sur les données personnelles que nous "
        "détenons sur vous, comme le prévoit le Règlement général sur la protection des données (RGPD). C’est "
        "gratuit.",
        "required_note": "Les champs marqués «\u00a0obligatoire\u00a0» doivent être remplis.",
        "required": "obligatoire",
        "optional": "facultatif",
        "kind_legend": "Que souhaitez-vous faire\u00a0?",
        "kind_access": "Accéder à vos données",
        "kind_access_hint": "Obtenir une copie de vos données et savoir comment elles sont utilisées.",
        "kind_rectification": "Corriger vos données",
        "kind_rectification_hint": "Faire corriger des données fausses ou incomplètes. Sous «\u00a0Corrections\u00a0»,"
        " choisissez chaque information à corriger et donnez la bonne valeur\u00a0; pour le reste, décrivez-le "
        "dans le champ «\u00a0Précisions\u00a0».",
        "kind_erasure": "Effacer vos données",
        "kind_erasure_hint": "Faire supprimer vos données. Nous ne gardons que ce que la loi nous oblige à "
        "conserver (les factures, par exemple), et nous vous dirons quoi et jusqu’à quand.",
        "kind_portability": "Récupérer vos données pour les réutiliser ailleurs",
        "kind_portability_hint": "Recevoir les données que vous nous avez fournies dans un format lisible par un "
        "ordinateur, pour les transmettre à un autre service.",
        "kind_stop_marketing": "Ne plus recevoir nos messages commerciaux",
        "kind_stop_marketing_hint": "Plus de lettres d’information, d’offres, d’appels ni de messages promotionnels, "
        "d’aucun de nos services. C’est fait tout de suite, sans question ni justificatif, et votre adresse n’est "
        "jamais réinscrite.",
        "kind_restriction": "Limiter l’utilisation de vos données",
        "kind_restriction_hint": "Faire conserver vos données sans plus les utiliser, pour un temps : pendant que vous "
        "en contestez l’exactitude, à la place d’un effacement, tant qu’elles vous sont nécessaires pour une action en "
        "justice, ou pendant l’examen de votre opposition. Choisissez le motif ci-dessous. Nous vous prévenons avant "
        "la fin de la limitation.",
        "ground_legend": "Pourquoi vous demandez une limitation (seulement pour limiter l’utilisation de vos données)",
        "ground_hint": "Le motif décide de la durée de la limitation (article 18, paragraphe 1, du RGPD).",
        "ground_a": "Vous contestez l’exactitude de vos données : les limiter pendant que nous la vérifions",
        "ground_b": "Vous estimez illicite notre utilisation de vos données, mais voulez qu’elles soient conservées "
        "plutôt qu’effacées",
        "ground_c": "Nous n’avons plus besoin de vos données, mais elles vous sont nécessaires pour la constatation, "
        "l’exercice ou la défense de droits en justice",
        "ground_d": "Vous vous êtes opposé(e) à notre utilisation de vos données : les limiter pendant l’examen de "
        "votre opposition",
        "err_ground": "Pour une limitation, choisissez le motif de votre demande.",
        "kind_objection": "Vous opposer à un autre usage de vos données",
        "kind_consent_withdrawal": "Retirer un consentement que vous nous avez donné",
        "kind_consent_withdrawal_hint": "Cochez ce que vous n’acceptez plus (rien de coché : tout). Aucun autre "
        "justificatif n’est demandé et c’est fait aujourd’hui ; ce qui a été fait avant reste licite (article 7, "
        "paragraphe 3, du RGPD).",
        "purposes_legend": "Consentements à retirer",
        "kind_objection_hint": "Nous utilisons certaines données sur le fondement de notre intérêt légitime "
        "(statistiques, prévention de la fraude, par exemple). Indiquez dans le champ «\u00a0Précisions\u00a0» "
        "l’usage auquel vous vous opposez et, si vous le souhaitez, pourquoi\u00a0: nous l’arrêtons, sauf motifs "
        "impérieux que nous vous expliquerions.",
        "kind_post_mortem": "Les données d’une personne décédée",
        "kind_post_mortem_hint": "Vous êtes héritier, exécuteur de la succession ou la personne qu’elle a désignée : "
        "faites clôturer ses comptes et effacer ses données, ou demandez les informations utiles au règlement de la "
        "succession. Remplissez « Une personne décédée » ci-dessous ; nous vous demanderons l’acte de décès "
        "et la preuve de votre qualité (article 85 de la loi Informatique et Libertés).",
        "deceased_legend": "Une personne décédée (seulement pour une demande sur ses données)",
        "deceased_hint": "L’adresse électronique qu’elle utilisait chez nous, pour retrouver ses données. C’est à "
        "votre adresse, ci-dessus, que nous écrirons.",
        "deceased_email_label": "Son adresse électronique",
        "deceased_name_label": "Ses nom et prénom",
        "quality_label": "Vous êtes",
        "quality_heir": "héritier ou héritière",
        "quality_executor": "exécuteur de la succession (ou notaire)",
        "quality_designated": "la personne qu’elle a désignée dans ses directives",
        "err_deceased_missing": "Saisissez l’adresse électronique de la personne décédée.",
        "err_deceased_invalid": "Saisissez une adresse électronique valide pour la personne décédée, par exemple "
        "nom@exemple.fr.",
        "err_deceased_self": "C’est votre propre adresse : saisissez celle de la personne décédée.",
        "err_quality": "Choisissez votre qualité vis-à-vis de la personne décédée.",
        "documents_label": "Justificatifs",
        "documents_hint": "Vous pouvez joindre ici l’acte de décès et la preuve que vous êtes héritier, exécuteur "
        "de la succession ou la personne désignée dans ses directives : jusqu’à 5 fichiers, PDF, JPEG ou PNG, "
        "10 Mo chacun et 20 Mo en tout. Sinon, nous vous les demanderons par courriel. Ils servent "
        "uniquement à cette vérification et sont supprimés dès qu’elle est faite.",
        "err_file_type": "Chaque justificatif doit être un fichier PDF, JPEG ou PNG. Rien n’a été enregistré : "
        "choisissez de nouveau vos fichiers.",
        "err_file_large": "Chaque justificatif doit faire 10 Mo au plus. Rien n’a été enregistré : "
        "choisissez de nouveau vos fichiers.",
        "err_files_count": "Envoyez 5 justificatifs au plus. Rien n’a été enregistré : choisissez de nouveau "
        "vos fichiers.",
        "err_files_again": "Votre demande n’a pas été envoyée, vos justificatifs n’ont donc pas été conservés : "
        "choisissez-les de nouveau.",
        "err_documents_off": "Ce formulaire ne permet pas d’envoyer de justificatifs : envoyez votre demande "
        "sans eux et répondez à notre courriel en les joignant.",
        "files_too_large_title": "Vos justificatifs sont trop volumineux",
        "files_too_large_body": "Envoyez 20 Mo de justificatifs au plus en tout (10 Mo chacun) ; rien "
        "n’a été enregistré. Vous pouvez aussi envoyer votre demande sans eux et répondre à notre courriel en les "
        "joignant.",
        "email_label": "Votre adresse électronique",
        "email_hint": "Nous vous écrirons à cette adresse pour vérifier qu’elle est bien la vôtre, puis pour vous "
        "répondre. Utilisez celle que vous utilisez chez nous.",
        "name_label": "Vos prénom et nom",
        "name_hint": "Ils nous aident à retrouver vos données, par exemple si vous avez changé d’adresse.",
        "details_label": "Précisions",
        "details_hint": "Pour une correction absente de la liste des «\u00a0Corrections\u00a0», dites-nous ce qui "
        "est faux et la bonne valeur. Sinon, vous pouvez préciser les services ou les comptes concernés.",
        "changes_legend": "Corrections (seulement pour corriger vos données)",
        "changes_hint": "Pour chaque information à corriger, choisissez-la et saisissez la bonne valeur. Nous la "
        "corrigeons alors dans nos systèmes sans autre échange\u00a0; ce qui est décrit seulement dans le champ "
        "«\u00a0Précisions\u00a0» est traité par un membre de notre équipe, ce qui peut prendre plus de temps.",
        "change_field_label": "Information à corriger",
        "change_value_label": "Bonne valeur",
        "change_none": "(choisir)",
        "field_first_name": "Prénom",
        "field_last_name": "Nom",
        "field_email": "Adresse électronique",
        "field_phone": "Téléphone",
        "field_address_line1": "Adresse (ligne\u00a01)",
        "field_address_line2": "Adresse (ligne\u00a02)",
        "field_postcode": "Code postal",
        "field_city": "Ville",
        "field_state": "Région",
        "field_country": "Pays",
        "reply_language": "Nous vous répondrons en français.",
        "submit": "Envoyer ma demande",
        "next_title": "Et ensuite\u00a0?",
        "next_confirm": "Nous vous envoyons un courriel pour confirmer votre adresse électronique\u00a0: cliquez "
        "sur le lien qu’il contient.",
        "next_deadline": "Nous vous répondons dans un délai d’un mois à compter de la réception de votre demande. "
        "Si elle est complexe, ce délai peut être prolongé de deux mois\u00a0; nous vous le dirions alors avant la "
        "fin du premier mois, en expliquant pourquoi.",
        "privacy_title": "Ce que nous faisons des informations de ce formulaire",
        "privacy_body": "Nous les utilisons uniquement pour traiter votre demande et pouvoir prouver que nous y "
        "avons répondu, comme la loi nous y oblige. Nous ne les utilisons pas à d’autres fins, par exemple "
        "commerciales. L’adresse IP de votre connexion sert seulement à empêcher les abus (trop de demandes "
        "envoyées). Ce formulaire dépose un seul cookie, nécessaire à sa sécurité\u00a0: il ne contient aucune "
        "donnée personnelle et expire après deux heures.",
        "summary_title": "Votre demande n’a pas été envoyée",
        "err_kind": "Choisissez ce que vous souhaitez faire.",
        "err_email_missing": "Saisissez votre adresse électronique.",
        "err_email_invalid": "Saisissez une adresse électronique valide, par exemple nom@exemple.fr.",
        "err_name_long": f"Votre nom doit faire au plus {MAX_NAME}\u00a0caractères.",
        "err_details_long": f"Les précisions doivent faire au plus {MAX_DETAILS:,}\u00a0caractères.".replace(
            ",", "\u00a0"
        ),
        "err_details_rectification": "Pour une correction, choisissez l’information à corriger et donnez la bonne "
        "valeur, ou dites-nous ce qui est faux et la bonne valeur dans le champ «\u00a0Précisions\u00a0».",
        "err_change_field": "Choisissez une information dans la liste.",
        "err_change_field_missing": "Choisissez l’information à laquelle correspond cette bonne valeur.",
        "err_change_twice": "Cette information est déjà choisie plus haut\u00a0: donnez sa bonne valeur une seule "
        "fois.",
        "err_change_value_missing": "Saisissez la bonne valeur.",
        "err_change_value_long": "La bonne valeur doit faire au plus 500\u00a0caractères.",
        "err_change_email": "Saisissez la bonne adresse électronique en entier, par exemple nom@exemple.fr.",
        "err_control": "Ce champ contient des caractères non autorisés.",
        "err_duplicate": "Ce champ a été envoyé plusieurs fois. Remplissez-le de nouveau.",
        "err_unreadable": "Le formulaire n’a pas pu être lu. Remplissez-le de nouveau.",
        "err_rejected": "Votre demande n’a pas pu être enregistrée. Vérifiez vos réponses et réessayez.",
        "err_rate_limited": "Trop de demandes ont été envoyées depuis votre connexion ou pour cette adresse. "
        "Réessayez dans {duration}.",
        "err_unavailable": "Un problème temporaire nous a empêchés d’enregistrer votre demande. Vos réponses sont "
        "conservées ci-dessous\u00a0; réessayez dans quelques minutes.",
        "csrf_title": "Ce formulaire a expiré",
        "csrf_body": "Pour votre sécurité, le formulaire n’est valable que deux heures et seulement dans le "
        "navigateur où il a été ouvert. Rechargez le formulaire et envoyez votre demande de nouveau\u00a0: rien n’a "
        "été enregistré.",
        "too_large_body": "Raccourcissez vos précisions et envoyez votre demande de nouveau\u00a0: rien n’a été "
        "enregistré.",
        "unsupported_body": "Envoyez votre demande depuis le formulaire de cette page\u00a0: rien n’a été enregistré.",
        "back_to_form": "Revenir au formulaire",
        "confirm_title": "Votre demande a bien été reçue",
        "confirm_reference": "La référence de votre demande figure dans le courriel que nous envoyons à l’adresse "
        "indiquée\u00a0: rappelez-la si vous nous contactez.",
        "confirm_kind": "Votre demande\u00a0:",
        "confirm_deadline": "Réponse au plus tard le\u00a0:",
        "confirm_address": "Nous vous écrivons à\u00a0:",
        "confirm_typo": "Cette adresse est-elle erronée\u00a0? Nos courriels ne pourront alors pas vous "
        "parvenir\u00a0: envoyez de nouveau le formulaire avec la bonne adresse.",
        "confirm_inbox": "Vérifiez votre boîte de réception\u00a0: nous venons de vous écrire. Si nous devons "
        "confirmer votre adresse électronique, le courriel contient un lien, et nous ne pouvons traiter votre "
        "demande qu’après cette confirmation. Pensez à regarder dans vos courriels indésirables.",
        "confirm_extension": "Si votre demande est complexe, ce délai peut être prolongé de deux mois\u00a0; nous "
        "vous le dirions avant cette date, en expliquant pourquoi.",
        "invalid_confirmation_title": "Cette page n’est pas valide",
        "invalid_confirmation_body": "Si vous venez d’envoyer une demande, vérifiez votre boîte de réception\u00a0: "
        "nous vous avons écrit. Sinon, remplissez le formulaire.",
    },
}
"""The public form: ``/`` and ``/submitted``."""


ANSWER: dict[str, dict[str, str]] = {
    "en": {
        **COMMON["en"],
        "title": "Answer a data-subject request",
        "intro": "Request {reference} ({kind}) concerns {system}. We need your answer by {answer_by}. Say what you "
        "did; the answer is recorded once.",
        "status": "Your answer",
        "done": "Done: carried out as asked",
        "no_data": "No data about this person",
        "kept": "Kept: a legal obligation requires keeping the data",
        "cannot": "Cannot be carried out",
        "legal_basis": "Legal basis for keeping it",
        "legal_basis_hint": "For example: Art. 17(3)(b) GDPR; Code de commerce L123-22 (accounting, 10 years).",
        "until": "Kept until (date)",
        "reason": "Why it cannot be carried out",
        "file": "Export file (optional: CSV, JSON or any other file, up to 10 MB)",
        "submit": "Send the answer",
        "missing_status": "Choose an answer.",
        "missing_basis": "Give the legal basis for keeping the data.",
        "missing_until": "Give the date until which the data is kept (after today).",
        "missing_reason": "Say why it cannot be carried out.",
        "file_refused": "The file could not be taken (at most 10 MB).",
        "thanks_title": "Thank you: your answer is recorded",
        "thanks_body": "Request {reference}: nothing more is needed from you.",
        "already_title": "This request was already answered",
        "already_body": "An answer was recorded on {answered_on}. If it must change, reply to our email.",
        "invalid_body": "Check that you copied the whole link from our email.",
        "expired_title": "This link has expired",
        "expired_body": "Reply to our email and we will send a new link.",
        "form_invalid_body": "Open the link from our email again.",
        "error_title": "A temporary problem prevented the answer",
        "error_body": "Please try again in a few minutes.",
    },
    "fr": {
        **COMMON["fr"],
        "title": "Répondre à une demande d’exercice de droits",
        "intro": "La demande {reference} ({kind}) concerne {system}. Nous avons besoin de votre réponse avant le "
        "{answer_by}. Indiquez ce que vous avez fait\u00a0; la réponse n’est enregistrée qu’une fois.",
        "status": "Votre réponse",
        "done": "Fait\u00a0: réalisé comme demandé",
        "no_data": "Aucune donnée sur cette personne",
        "kept": "Conservé\u00a0: une obligation légale impose de garder les données",
        "cannot": "Impossible à réaliser",
        "legal_basis": "Base légale de la conservation",
        "legal_basis_hint": "Par exemple\u00a0: art. 17(3)(b) RGPD\u00a0; Code de commerce L123-22 (comptabilité, "
        "10\u00a0ans).",
        "until": "Conservé jusqu’au (date)",
        "reason": "Pourquoi ce n’est pas possible",
        "file": "Fichier d’export (facultatif\u00a0: CSV, JSON ou autre, 10\u00a0Mo au plus)",
        "submit": "Envoyer la réponse",
        "missing_status": "Choisissez une réponse.",
        "missing_basis": "Indiquez la base légale de la conservation.",
        "missing_until": "Indiquez la date de fin de conservation (postérieure à aujourd’hui).",
        "missing_reason": "Indiquez pourquoi ce n’est pas possible.",
        "file_refused": "Le fichier n’a pas pu être pris (10\u00a0Mo au plus).",
        "thanks_title": "Merci\u00a0: votre réponse est enregistrée",
        "thanks_body": "Demande {reference}\u00a0: nous n’avons besoin de rien d’autre.",
        "already_title": "Une réponse a déjà été donnée à cette demande",
        "already_body": "Une réponse a été enregistrée le {answered_on}. Pour la modifier, répondez à notre courriel.",
        "invalid_body": "Vérifiez que vous avez copié le lien complet depuis notre courriel.",
        "expired_title": "Ce lien a expiré",
        "expired_body": "Répondez à notre courriel et nous vous enverrons un nouveau lien.",
        "form_invalid_body": "Ouvrez de nouveau le lien de notre courriel.",
        "error_title": "Un problème temporaire a empêché l’enregistrement de la réponse",
        "error_body": "Veuillez réessayer dans quelques minutes.",
    },
}
"""``/answer/{token}``: a processor's or an internal owner's answer to a request."""


STATUS: dict[str, dict[str, str]] = {
    "en": {
        **COMMON["en"],
        "title": "Your request {reference}",
        "reference": "Reference",
        "request": "Request",
        "received": "Received on",
        "stage": "Where it stands",
        "deadline": "Reply by",
        "kind_access": "Access to your personal data (Article 15 GDPR)",
        "kind_rectification": "Rectification of your personal data (Article 16 GDPR)",
        "kind_erasure": "Erasure of your personal data (Article 17 GDPR)",
        "kind_portability": "Your personal data in a portable format (Article 20 GDPR)",
        "kind_objection": "Objection to the processing of your personal data (Article 21 GDPR)",
        "kind_consent_withdrawal": "Withdrawal of your consent (Article 7(3) GDPR)",
        "kind_post_mortem": "Request about the data of a deceased person (Article 85 of the French loi Informatique "
        "et Libertés)",
        "kind_restriction": "Restriction of the processing of your personal data (Article 18 GDPR)",
        "stage_received": "Received",
        "stage_awaiting_identity": "Waiting for your identity to be confirmed",
        "stage_processing": "In progress: we are searching our systems",
        "stage_needs_attention": "In progress: our team is looking into it",
        "stage_replying": "Our reply is being prepared",
        "stage_closed": "Closed",
        "outcome_fulfilled": "Answered",
        "outcome_refused": "Closed: refused (the reasons are in our email)",
        "outcome_unverified": "Closed: identity not confirmed in time",
        "outcome_withdrawn": "Closed: withdrawn",
        "outcome_declined": "Closed: objection not upheld (our reasons are in our email)",
        "outcome_terminated": "Closed without our reply",
        "extension_heading": "Extension",
        "extended_body": "The time to reply was extended by two months (it was due on {previous}), as Article 12(3) "
        "GDPR allows. Our reason:",
        "extended_plain": "The time to reply was extended by two months, as Article 12(3) GDPR allows. Our reason:",
        "waiting_heading": "What we are waiting for",
        "waiting_identity_email": "Your confirmation that the request is yours: open the link in the email we sent "
        "you about your identity. Cannot find it? We can send it again.",
        "waiting_identity_document": "The document we asked you for in our email, to confirm that the request is "
        "yours. Reply to that email with it.",
        "waiting_identity_review": "Nothing more for now: we received {files} from you and our team is checking "
        "what you sent. We will write to you if anything is missing.",
        "waiting_quality_document": "The documents we asked you for in our email, since you act for a person who has "
        "died: a copy of the death certificate, and the proof that you are their heir, the executor of their estate "
        "or the person they designated in their directives (Article 85 of the French loi Informatique et Libertés). "
        "Reply to that email with them.",
        "waiting_quality_review": "Nothing more for now: we received {files} from you, and our team is checking "
        "that what you sent proves the death and that you are an heir, the executor of the estate or the person "
        "designated in the directives. We will write to you if anything is missing.",
        "stage_awaiting_identity_quality": "Waiting for the documents proving the death and your quality to be "
        "checked",
        "outcome_unverified_quality": "Closed: the documents proving the death and your quality did not reach us in "
        "time",
        "closed_unverified_quality": "The documents proving the death and your quality did not reach us in time; you "
        "may make a new request at any time.",
        "files_one": "one file",
        "files_many": "{count} files",
        "waiting_team": "Nothing from you: our team is dealing with a point of your request. We will write to you "
        "when it is answered.",
        "waiting_us": "Nothing from you: we are working on your request and will write to you by the date above.",
        "closed_fulfilled": "We sent you our reply by email. Reply to it if anything is missing.",
        "closed_refused": "We wrote to you with our reasons and how to lodge a complaint.",
        "closed_declined": "We wrote to you with our decision on your objection, our reasons and how to lodge a "
                           "complaint.",
        "closed_unverified": "Your identity was not confirmed in time; you may make a new request at any time.",
        "closed_withdrawn": "The request was withdrawn; you may make a new one at any time.",
        "closed_terminated": "This request was closed without the reply we owed you. Write to us and we will answer; "
                             "you may also lodge a complaint with the CNIL.",
        "resend_button": "Send the identity email again",
        "resent": "If your request still waits for your identity, we have sent the email again to the address it "
        "came from. It may take a few minutes to arrive.",
        "privacy_note": "This page shows no personal data, only your request's reference. Keep the link to yourself.",
        "invalid_body": "Check that you copied the whole link from our email.",
        "expired_title": "This link has expired",
        "expired_body": "Reply to one of our emails about your request and we will tell you where it stands.",
        "unknown_title": "This request cannot be found",
        "unknown_body": "Reply to one of our emails about your request and we will tell you where it stands.",
        "bad_form_body": "Open the link from our email again and try once more.",
        "form_invalid_body": "Open the link from our email again and try once more.",
        "locked_title": "The email was just sent again",
        "locked_body": "The email was sent again not long ago. Please wait {minutes} minutes before asking again.",
        "error_title": "This cannot be done right now",
        "error_body": "Please try again in a few minutes.",
    },
    "fr": {
        **COMMON["fr"],
        "title": "Votre demande {reference}",
        "reference": "Référence",
        "request": "Demande",
        "received": "Reçue le",
        "stage": "Où elle en est",
        "deadline": "Réponse au plus tard le",
        "kind_access": "Accès à vos données personnelles (article 15 du RGPD)",
        "kind_rectification": "Rectification de vos données personnelles (article 16 du RGPD)",
        "kind_erasure": "Effacement de vos données personnelles (article 17 du RGPD)",
        "kind_portability": "Portabilité de vos données personnelles (article 20 du RGPD)",
        "kind_objection": "Opposition au traitement de vos données personnelles (article 21 du RGPD)",
        "kind_consent_withdrawal": "Retrait de votre consentement (article 7, paragraphe 3, du RGPD)",
        "kind_post_mortem": "Demande relative aux données d’une personne décédée (article 85 de la loi "
        "Informatique et Libertés)",
        "kind_restriction": "Limitation du traitement de vos données personnelles (article 18 du RGPD)",
        "stage_received": "Reçue",
        "stage_awaiting_identity": "En attente de la confirmation de votre identité",
        "stage_processing": "En cours : nous consultons nos systèmes",
        "stage_needs_attention": "En cours : notre équipe l’examine",
        "stage_replying": "Notre réponse est en préparation",
        "stage_closed": "Close",
        "outcome_fulfilled": "Traitée : réponse envoyée",
        "outcome_refused": "Close : refusée (les motifs sont dans notre e-mail)",
        "outcome_unverified": "Close : identité non confirmée à temps",
        "outcome_withdrawn": "Close : retirée",
        "outcome_declined": "Close : opposition non retenue (nos motifs sont dans notre e-mail)",
        "outcome_terminated": "Close sans notre réponse",
        "extension_heading": "Prolongation",
        "extended_body": "Le délai de réponse a été prolongé de deux mois (l’échéance était le {previous}), comme le "
        "permet l’article 12, paragraphe 3, du RGPD. Notre motif :",
        "extended_plain": "Le délai de réponse a été prolongé de deux mois, comme le permet l’article 12, "
        "paragraphe 3, du RGPD. Notre motif :",
        "waiting_heading": "Ce que nous attendons",
        "waiting_identity_email": "Votre confirmation que la demande est bien la vôtre : ouvrez le lien de l’e-mail "
        "que nous vous avons envoyé au sujet de votre identité. Introuvable ? Nous pouvons vous le renvoyer.",
        "waiting_identity_document": "Le justificatif demandé dans notre e-mail, pour confirmer que la demande est "
        "bien la vôtre. Répondez à cet e-mail en le joignant.",
        "waiting_identity_review": "Rien de plus pour le moment : nous avons reçu {files} de votre part et notre "
        "équipe vérifie ce que vous avez envoyé. Nous vous écrirons s’il manque quelque chose.",
        "waiting_quality_document": "Les justificatifs demandés dans notre e-mail, puisque vous agissez pour une "
        "personne décédée : une copie de l’acte de décès, et la preuve que vous êtes son héritier, l’exécuteur de sa "
        "succession ou la personne qu’elle a désignée dans ses directives (article 85 de la loi Informatique et "
        "Libertés). Répondez à cet e-mail en les joignant.",
        "waiting_quality_review": "Rien de plus pour le moment : nous avons reçu {files} de votre part, et notre "
        "équipe vérifie que ce que vous avez envoyé établit le décès et votre qualité d’héritier, d’exécuteur de la "
        "succession ou de personne désignée dans les directives. Nous vous écrirons s’il manque quelque chose.",
        "stage_awaiting_identity_quality": "En attente de la vérification des justificatifs du décès et de votre "
        "qualité",
        "outcome_unverified_quality": "Close : les justificatifs du décès et de votre qualité ne nous sont pas "
        "parvenus à temps",
        "closed_unverified_quality": "Les justificatifs du décès et de votre qualité ne nous sont pas parvenus à "
        "temps ; vous pouvez faire une nouvelle demande à tout moment.",
        "files_one": "un fichier",
        "files_many": "{count} fichiers",
        "waiting_team": "Rien de votre part : notre équipe traite un point de votre demande. Nous vous écrirons dès "
        "qu’il sera réglé.",
        "waiting_us": "Rien de votre part : nous traitons votre demande et vous répondrons au plus tard à la date "
        "ci-dessus.",
        "closed_fulfilled": "Nous vous avons répondu par e-mail. Répondez-y s’il manque quelque chose.",
        "closed_refused": "Nous vous avons écrit nos motifs et comment introduire une réclamation.",
        "closed_declined": "Nous vous avons écrit notre décision sur votre opposition, nos motifs et comment "
                           "introduire une réclamation.",
        "closed_unverified": "Votre identité n’a pas été confirmée à temps ; vous pouvez faire une nouvelle demande "
        "à tout moment.",
        "closed_withdrawn": "La demande a été retirée ; vous pouvez en faire une nouvelle à tout moment.",
        "closed_terminated": "Cette demande a été close sans la réponse que nous vous devions. Écrivez-nous et nous "
                             "vous répondrons ; vous pouvez aussi introduire une réclamation auprès de la CNIL.",
        "resend_button": "Renvoyer l’e-mail de confirmation d’identité",
        "resent": "Si votre demande attend toujours la confirmation de votre identité, nous avons renvoyé l’e-mail à "
        "l’adresse d’où elle venait. Il peut mettre quelques minutes à arriver.",
        "privacy_note": "Cette page ne montre aucune donnée personnelle, seulement la référence de votre demande. "
        "Gardez ce lien pour vous.",
        "invalid_body": "Vérifiez que vous avez copié le lien complet de notre e-mail.",
        "expired_title": "Ce lien a expiré",
        "expired_body": "Répondez à l’un de nos e-mails au sujet de votre demande : nous vous dirons où elle en est.",
        "unknown_title": "Cette demande est introuvable",
        "unknown_body": "Répondez à l’un de nos e-mails au sujet de votre demande : nous vous dirons où elle en est.",
        "bad_form_body": "Ouvrez de nouveau le lien de notre e-mail et réessayez.",
        "form_invalid_body": "Ouvrez de nouveau le lien de notre e-mail et réessayez.",
        "locked_title": "L’e-mail vient d’être renvoyé",
        "locked_body": "L’e-mail vient d’être renvoyé. Merci d’attendre {minutes} minutes avant de le redemander.",
        "error_title": "Impossible pour le moment",
        "error_body": "Merci de réessayer dans quelques minutes.",
    },
}
"""The subject's status page (``/status/{token}``): no word on it names the subject."""
